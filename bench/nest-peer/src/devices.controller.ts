import { Body, Controller, Get, HttpCode, Post } from '@nestjs/common';
import { ConnectDeviceDto } from './connect-device.dto';
import { DevicesService } from './devices.service';

@Controller()
export class DevicesController {
  constructor(private readonly devices: DevicesService) {}

  @Post('devices/connect')
  @HttpCode(200)
  connect(@Body() dto: ConnectDeviceDto) {
    return this.devices.connect(dto);
  }

  /** herd-bench polls this until every worker is up. */
  @Get('readyz')
  ready() {
    return { status: 'ok' };
  }
}
