// The body of POST /devices/connect, validated by class-validator through Nest's global
// ValidationPipe as the seed's ConnectDeviceDto is. The device names itself by serial number.
import { IsIP, IsNotEmpty, IsOptional, IsString, MaxLength } from 'class-validator';

export class ConnectDeviceDto {
  @IsString()
  @IsNotEmpty()
  @MaxLength(128)
  serialNumber!: string;

  @IsOptional()
  @IsIP()
  ipAddress?: string;

  @IsOptional()
  @IsString()
  @MaxLength(64)
  appVersion?: string;
}
